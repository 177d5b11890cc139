"""Crystal candidates for a chemical system a team asks for, from every source chemgen has.

A `request.ScreeningRequest` names the system (elements, optionally a formula and the atoms a cell may hold). Each
source (`sources`) yields `candidates.Candidate` records for it through one interface:

* ``adit``: the generative model, its samples filtered to the system (`model_source`);
* ``substitution``: data-mined ion substitution into MP-20's training structures (`substitution`);
* ``random``: random symmetric structures, PyXtal, space groups and Wyckoff sets sampled (`random_search`);
* ``upload``: the team's own CIF or extxyz structures (`uploads`).

`pipeline` then screens them together: validity, batched CHGNet relaxation within a budget, de-duplication across
sources, E_hull against the MP-20 hull (with the team's reference entries), novelty, ranking, and a report per source.
"""
