"""Artifact formats: ORT on-device training folder (models, checkpoint, optimizer), manifest, atomic writes."""
