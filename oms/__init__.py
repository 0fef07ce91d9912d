"""The OMS service: domain model, HTTP API, persistence, inventory, CLI."""
