"""medpipe.models"""
