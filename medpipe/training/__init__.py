"""medpipe.training"""
