"""stvg-vem model package: StvgConfig + StvgModel, registered with the transformers Auto classes on import.

* ``AutoConfig.register`` / ``AutoModel.register`` make ``AutoModel.from_pretrained(local_dir)`` work in a process
  that imported this package.
* ``register_for_auto_class`` makes ``save_pretrained`` copy ``configuration_stvg.py`` and ``modeling_stvg.py`` next
  to the weights and write ``auto_map`` into config.json, so the checkpoint loads with ``trust_remote_code=True``
  where this package is not installed.
"""

from transformers import AutoConfig, AutoModel

from .configuration_stvg import StvgConfig
from .modeling_stvg import (
    StvgInputError,
    StvgModel,
    StvgModelOutput,
    StvgNetworkOutput,
    StvgPosteriorNetwork,
    StvgPreTrainedModel,
    StvgStepOutput,
    StvgVariationalNetwork,
    compute_e_step_loss,
    compute_m_step_loss,
    contrastive_loss,
    cross_assignment_loss,
    link_tubes,
    load_glove_vectors,
    predict_grounding,
    prepare_stvg_inputs,
    reconstruction_loss,
    validate_stvg_inputs,
)

AutoConfig.register(StvgConfig.model_type, StvgConfig, exist_ok=True)
AutoModel.register(StvgConfig, StvgModel, exist_ok=True)
StvgConfig.register_for_auto_class()
StvgModel.register_for_auto_class("AutoModel")

__all__ = [
    "StvgConfig",
    "StvgInputError",
    "StvgModel",
    "StvgModelOutput",
    "StvgNetworkOutput",
    "StvgPosteriorNetwork",
    "StvgPreTrainedModel",
    "StvgStepOutput",
    "StvgVariationalNetwork",
    "compute_e_step_loss",
    "compute_m_step_loss",
    "contrastive_loss",
    "cross_assignment_loss",
    "link_tubes",
    "load_glove_vectors",
    "predict_grounding",
    "prepare_stvg_inputs",
    "reconstruction_loss",
    "validate_stvg_inputs",
]
