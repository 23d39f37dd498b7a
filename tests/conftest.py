"""Shared fixtures. TensorFlow's C++ logging is quietened before any test imports it."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
