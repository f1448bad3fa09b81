"""The VAE sampler family (``vae`` generator, ``vae_mc`` refiner): a generator with exact
encoder, prior and decoder densities, and a refiner that moves units by exact VAE Monte Carlo
(Monroe & Shen 2022). See docs/vae.md."""
from backmap.api import hookimpl


@hookimpl
def backmap_generators():
    from backmap_vae.generator import VAEGenerator

    return [VAEGenerator]


@hookimpl
def backmap_refiners():
    from backmap_vae.refiner import VAEMCRefiner

    return [VAEMCRefiner]
