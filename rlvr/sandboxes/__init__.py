"""rlvr.sandboxes"""
