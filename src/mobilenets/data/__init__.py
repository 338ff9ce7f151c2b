"""Data, one module per source or job.

- classification: Fashion-MNIST from its idx files (fashion_mnist.py), image-folder trees (image_folder.py), and
  the one builder of training and evaluation batches (loaders.py);
- detection and segmentation: COCO-format folders (coco.py), VOC-style mask folders (masks.py), the built-in
  Fashion-MNIST scenes that need no download (scenes.py), and the dense tasks' splits and inputs (dense.py);
- every task: image decoding and the image -> tensor preprocessing a checkpoint names (transforms.py), and the
  input batches of parity checks, int8 calibration and accuracy figures (samples.py).
"""
