"""rlvr.verifiers"""
