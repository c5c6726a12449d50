"""The model families ditfarm renders: one module each, holding (or naming) the family's pipeline and a
``Family`` registered with ``ditfarm.pipelines.family.register_family``.  Every module here is imported when the
registry is first asked, so a new family is a new module here and its adapter, and no edit elsewhere."""
