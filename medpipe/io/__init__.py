"""medpipe.io"""
