"""``icuwatch chaos``: faults injected into a running pipeline; the alerts stored are compared with a
fault-free run of the same simulated patients and with the simulator's ground truth.

Every run has a stack of its own (Tansu on 27092, tritonserver on 27000-27002, workers' web ports
27066+, a fresh PostgreSQL database reached through a :class:`FaultProxy` on 27432), the same
seeded patients at the same event times, so a fault-free pipeline raises the same alert ids (the
id is patient, kind and episode start) and any difference is the fault's doing:

* lost: an alert (patient and kind) of the fault-free run missing from the faulted one;
* duplicated: more distinct alert ids for a patient and kind than the fault-free run has: stored,
  or, in a run where something reached the worker twice (``compare.redelivered``: a re-read record,
  a score taken more often than published...), also refused as "suppressed" because one was open.
  A redelivered stream re-raises an episode under another id, and an open alert would hide it from
  the count of stored ones. In a run where nothing was delivered twice no episode can be re-raised;
  its refused episodes beyond the reference's are another trajectory of the same patient (the
  fault changed the scores: the rules scored during a Triton outage) and are reported, not counted
  (``episodes_beyond_reference_with_refused``; ``refused_episodes`` lists each refusal with the
  source of the score that opened it and of the one its 'above' run began on).

Scores are compared too: a score time of the fault-free run missing after the fault, or one whose
vital-sign scores (NEWS2, qSOFA) differ, means the patient's window did not come back whole.
"""

from icuwatch.benchmarks.chaos.compare import compare
from icuwatch.benchmarks.chaos.run import run_chaos, run_once
from icuwatch.benchmarks.chaos.scenarios import SCENARIOS
from icuwatch.benchmarks.chaos.stack import CHAOS_ENV, POSTGRES_ADMIN_URL, Config, Run, triton_settings
from icuwatch.benchmarks.chaos.states import checkpointed_states, expected_states, state_differences

__all__ = [
    "CHAOS_ENV",
    "POSTGRES_ADMIN_URL",
    "SCENARIOS",
    "Config",
    "Run",
    "checkpointed_states",
    "compare",
    "expected_states",
    "run_chaos",
    "run_once",
    "state_differences",
    "triton_settings",
]
