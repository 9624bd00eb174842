"""From YAML to typed specs: the only modules that read config keys.

- :mod:`~solo_mixmask.config.compose`: the YAML files and ``key=value`` overrides (Hydra);
- :mod:`~solo_mixmask.config.schema`: defaults and start-up validation (solo-learn's schema);
- :mod:`~solo_mixmask.config.dataset_facts`: what each named dataset is (classes, image size);
- the specs, parsed once each: :mod:`~solo_mixmask.config.data_specs` (with
  :mod:`~solo_mixmask.config.augmentation_specs`), :mod:`~solo_mixmask.config.engine_specs`,
  :mod:`~solo_mixmask.config.run_specs` and :mod:`~solo_mixmask.config.eval_specs`.
"""
