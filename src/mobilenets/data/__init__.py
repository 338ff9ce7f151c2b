"""Data: Fashion-MNIST (idx files), image-folder trees, and the image -> tensor preprocessing."""
