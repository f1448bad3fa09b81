"""The template + restrained-EM baseline on an sPS 568 K CG frame gives a structure GROMACS accepts
and simulates for 1000 steps."""
import subprocess
import textwrap

import pytest

from conftest import REPO, need


@pytest.mark.gromacs
def test_sps_baseline_frame_runs_in_gromacs(shared, tmp_path, cli):
    gmx = need("gmx")
    sps = shared / "sps"
    recipe = tmp_path / "baseline.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: sps-baseline-test
        seed: 3
        workdir: work
        system: {{topology: {sps / 'top' / 'topol.top'}, mapping: {REPO / 'recipes' / 'sps' / 'sps.xml'}}}
        data: {{pairs: {sps / 'train'}, split: {{test_fraction: 0}}}}
        generator: {{plugin: template}}
        steps:
          - prepare: {{}}
          - train: {{}}
          - backmap: {{cg: {sps / 'eval_t568' / 'cg.xtc'}, frames: '0', candidates: 1, gibbs_sweeps: 0,
                       minimize_steps: 150}}
        """))
    code, out, err = cli("run", recipe)
    assert code == 0, err
    work = tmp_path / "work" / "backmap"
    mdp = tmp_path / "md.mdp"
    mdp.write_text("integrator = md\nnsteps = 1000\ndt = 0.001\ncutoff-scheme = Verlet\ncoulombtype = reaction-field\n"
                   "rcoulomb = 1.0\nrvdw = 1.0\nepsilon-rf = 2.5\ntcoupl = v-rescale\ntc-grps = system\ntau-t = 0.1\n"
                   "ref-t = 568\ngen-vel = yes\ngen-temp = 568\ngen-seed = 7\nconstraints = all-bonds\n")
    run = lambda *a: subprocess.run([gmx, *a], cwd=tmp_path, capture_output=True, text=True)  # noqa: E731
    g = run("grompp", "-f", str(mdp), "-p", str(work / "aa.top"), "-c", str(work / "aa.gro"), "-o", "md.tpr",
            "-maxwarn", "2")
    assert g.returncode == 0, g.stderr[-2000:]
    m = run("mdrun", "-s", "md.tpr", "-deffnm", "md", "-nt", "2")
    assert m.returncode == 0, m.stderr[-2000:]
    log = (tmp_path / "md.log").read_text()
    assert "Finished mdrun" in log and (tmp_path / "md.gro").is_file()
    assert "Statistics over 1001 steps" in log
