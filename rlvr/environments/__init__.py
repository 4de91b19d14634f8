"""rlvr.environments"""
