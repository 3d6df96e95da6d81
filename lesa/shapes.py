"""The shape of LESA's input, fixed by the original: VGG-19 conv5_4 of a 224 x 224 crop.

features (B, 196, 512): the 14 x 14 grid of regions, row-major (TF1: the NHWC map reshaped),
512 channels each. Every module that checks or allocates features takes the numbers from here.
"""
GRID = 14  # regions per side of the conv5_4 map
N_REGIONS = GRID * GRID  # 196
FEATURE_DIM = 512  # channels of conv5_4
FEATURE_SHAPE = (N_REGIONS, FEATURE_DIM)  # one image's features
