"""Workflow definitions: the dataclasses, their JSON form, validation and the registries."""
