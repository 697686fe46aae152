//! `simulation`: how the execution object behaves in `simulate` and rule-file scenarios (what
//! it looks like once started, and after each named outcome).

use crate::rules::compiled::{SimulatedChangeRules, SimulationRules};
use crate::rules::compiler::{Compiler, Scope};
use crate::rules::locate::DocPath;
use crate::rules::model::{SimulatedChange, Simulation};

impl Compiler<'_> {
    /// The simulated behaviour of the execution object.
    pub(crate) fn compile_simulation(&mut self, sim: &Simulation) -> SimulationRules {
        let at = DocPath::root().key("simulation");
        SimulationRules {
            started: sim
                .started
                .as_ref()
                .map(|s| self.simulated_change(at.key("started"), s)),
            outcomes: sim
                .outcomes
                .iter()
                .map(|(k, o)| {
                    (
                        k.clone(),
                        self.simulated_change(at.key("outcomes").key(k), o),
                    )
                })
                .collect(),
        }
    }

    /// One change: a status merge patch and objects that appear.
    fn simulated_change(&mut self, at: DocPath, ch: &SimulatedChange) -> SimulatedChangeRules {
        SimulatedChangeRules {
            status: ch
                .status
                .as_ref()
                .map(|s| self.tree(&at.key("status"), s, Scope::Sim, None)),
            objects: ch
                .objects
                .iter()
                .enumerate()
                .map(|(i, o)| self.tree(&at.key("objects").index(i), o, Scope::Sim, None))
                .collect(),
        }
    }
}
