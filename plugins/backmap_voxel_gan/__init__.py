"""DeepBackmap's voxel-CNN conditional WGAN-GP as a generator plugin (``voxel_gan``): Gaussian-density
voxelization of local environments, residual 3-D CNN generator and critic, autoregressive unrolled
training over each bead's atoms, energy regularizers, checkpoints with resume. See docs/voxel-gan.md."""
from backmap.api import hookimpl

from backmap_voxel_gan.generator import VoxelGAN


@hookimpl
def backmap_generators():
    return [VoxelGAN]
