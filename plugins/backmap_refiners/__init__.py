"""Built-in refiners: restrained Boltzmann sampling of the AA structure given the CG input."""
from backmap.api import hookimpl


@hookimpl
def backmap_refiners():
    from backmap_refiners.openmm_refiner import OpenMMRefiner
    from backmap_refiners.schedule import ScheduleRefiner
    from backmap_refiners.torch_refiners import LangevinRefiner, MALARefiner

    return [OpenMMRefiner, LangevinRefiner, MALARefiner, ScheduleRefiner]
