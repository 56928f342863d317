"""Layers shared by the model families.

`Conv` has nn.Conv's interface and parameter names (`kernel` HWIO, `bias`), so every
model, converter and pruning tool treats it as a plain convolution.
"""
import flax.linen as nn

Conv = nn.Conv
