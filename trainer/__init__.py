"""The joint reward model: backbones, prompting, model, losses (and, beside them, data, training and serving).

Submodules are imported explicitly (`from trainer.model import JointRewardModel`) so that importing the package
stays cheap for code that needs only part of it.
"""
