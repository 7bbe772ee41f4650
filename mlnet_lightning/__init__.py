"""The feed-forward network tutorial of PyTorch's nn module, as a PyTorch Lightning project."""
