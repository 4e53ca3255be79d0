"""Running and scoring models on whole images.

``metrics`` (PSNR, SSIM), ``inference`` (whole-image, tiled or resized dehazing; devices and
threads), ``baselines`` (the dark channel prior), ``scoring`` (a model on a dataset folder,
row by row) and ``dehazing`` (files and folders of photos). Import each on its own.
"""
