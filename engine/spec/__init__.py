"""What a run is asked to do: the JobSpec (settings with their validation and YAML round trip), the objectives and
the dataset format each needs, and GRPO's reward presets (named and weighted in the job).

May import engine.core and engine.data.
"""
