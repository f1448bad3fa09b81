"""A backmapper assembled from a generator and the plugins its settings name: the traversal of the
generator's environment spec and the selector of the settings."""
from __future__ import annotations

from backmap.engine.loaders import make_plugin
from backmap.engine.plugin import Generator
from backmap.engine.registry import Registry, default_registry
from backmap.sampling.backmapper import Backmapper, BackmapSettings
from backmap.sampling.environment import Channels
from backmap.system.mapping import CGTopology


def make_backmapper(cg_topology: CGTopology, generator: Generator, settings: BackmapSettings | None = None,
                    seed: int = 0, channels: Channels | None = None, registry: Registry | None = None,
                    where: str = "backmap") -> Backmapper:
    """A :class:`Backmapper` with the traversal plugin of the generator's spec and the selector
    plugin and move plugins of ``settings`` (channels: the model's; default derived from the topology)."""
    registry = registry or default_registry()
    settings = settings or BackmapSettings()
    spec = generator.environment
    traversal = registry.get("traversal", spec.traversal, where="environment.traversal").cls()
    selector = make_plugin("selector", settings.selector, settings.selector_params, registry,
                           where=f"{where}.selector_params")
    generator = generator.for_inference(settings.generator_params, where=f"{where}.generator_params")
    channels = channels or Channels.for_spec(cg_topology, spec.channels)
    moves = [make_plugin("move", m.name, m.params, registry, where=f"{where}.moves ({m.name})")
             for m in settings.move_choices(generator.projects_cg)]
    return Backmapper(cg_topology, generator, channels, traversal, selector, settings, seed=seed, moves=moves,
                      where=where)
