"""medpipe.pipeline"""
