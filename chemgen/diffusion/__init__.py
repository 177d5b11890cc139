"""Model-agnostic diffusion and flow-matching maths: interpolants, losses and ODE samplers.

Nothing here imports a model: samplers take the denoiser as a callable.
"""
