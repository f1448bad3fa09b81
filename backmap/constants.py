"""Physical constants in GROMACS units (nm, ps, kJ/mol, K)."""

#: Boltzmann's (molar gas) constant, kJ/mol/K (CODATA 2018, as GROMACS)
BOLTZMANN = 0.0083144626181532
