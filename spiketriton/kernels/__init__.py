"""Triton kernels and their plain launchers (no nn.Module, no autograd)."""
