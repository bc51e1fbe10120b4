"""The embedded local stack: runs the project's template.yaml on moto, with no Docker and no AWS account."""
