"""ShuffleNet v1 for Keras, with a TensorFlow Lite for Microcontrollers path.

Reference: Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional
Neural Network for Mobile Devices", CVPR 2018 (arXiv:1707.01083).
"""

from keras_shufflenet.layers import ChannelShuffle, ShuffleUnit
from keras_shufflenet.profiling import profile
from keras_shufflenet.shufflenet import ShuffleNet, preprocess_input

__version__ = "0.1.0"

__all__ = ["ChannelShuffle", "ShuffleNet", "ShuffleUnit", "preprocess_input", "profile"]
