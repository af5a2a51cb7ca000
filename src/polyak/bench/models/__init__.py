"""Models of the benchmark workloads (written here: torchvision is not a dependency)."""
from .deepobs import DeepOBSMLP, LogReg, NoisyQuadratic, TwoConvTwoDense
from .dnc import DNC, DNCState, allocation_weights, content_weights
from .mlp import MLP, LinearNetwork
from .recurrent import BiLSTMClassifier, CharLSTM
from .resnet import BasicBlock, CifarResNet, ResNet8
from .wide_resnet import WideResNet

__all__ = [
    "DeepOBSMLP", "LogReg", "NoisyQuadratic", "TwoConvTwoDense",
    "DNC", "DNCState", "allocation_weights", "content_weights",
    "MLP", "LinearNetwork",
    "BiLSTMClassifier", "CharLSTM",
    "BasicBlock", "CifarResNet", "ResNet8",
    "WideResNet",
]
