"""backmap.app — the use cases, one typed request -> result function each. The command line
(:mod:`backmap.cli`) and the recipe steps are thin adapters over them; no layer below imports this
package (``scripts/check_imports.py``).

======================  ==============================  =======================================
use case                request                         function
======================  ==============================  =======================================
map AA -> CG            :class:`.mapping.MapRequest`     :func:`.mapping.map_to_cg`
energies, bead forces   :class:`.energy.EnergyRequest`   :func:`.energy.compute_energies`
check / run a recipe    :class:`.recipes.RunRequest`     :func:`.recipes.run_recipe_file`
apply a model           :class:`.apply.ApplyRequest`     :func:`.apply.apply_model`
refine                  :class:`.refine.RefineRequest`   :func:`.refine.refine_structures`
evaluate                :class:`.evaluate.EvaluateRequest`  :func:`.evaluate.evaluate_candidates`
assess CG models        :class:`.assess.AssessRequest`   :func:`.assess.assess_models`
morph                   :class:`.morph.MorphRequest`     :func:`.morph.morph_structures`
convert / export model  :class:`.models.ConvertModelRequest`  :func:`.models.convert_model`, ...
======================  ==============================  =======================================

The modules are imported on use (``backmap.app.apply`` pulls in torch).
"""
