"""medpipe.kernels"""
