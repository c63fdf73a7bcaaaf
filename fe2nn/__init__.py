"""fe2nn: FE2 multiscale plugin for DOLFINx with a learned constitutive surrogate.

Units are SI throughout (Pa, s, m); symmetric tensors use Mandel notation
(see :mod:`fe2nn.mandel`).
"""
__version__ = "0.1.0"
