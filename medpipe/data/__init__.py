"""medpipe.data"""
