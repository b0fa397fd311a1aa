"""The models: the selective scan and its Triton kernels, reading weight files, the image towers, the CLIP assembly."""
