"""The harness plugin (controller.testing) is loaded through its pytest11 entry point."""
