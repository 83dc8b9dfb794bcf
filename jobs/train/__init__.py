"""The training package every Ray Train job builds on (pretrain, finetune).

``configs``   typed sections (one ``Strict`` base) and ``TrainConfig``, the fields every training job has
``schedules`` LR warmup + cosine, progressive stages, micro batches (pure)
``engine``    the DeepSpeed config, partitioned builds, parameter groups, checkpoint files
``data``      manifest, shard decoding and normalisation, ``make_*_fn`` factories, the Ray Dataset
``family``    one table row per model family: columns, preprocess factory, build, export facts
``loop``      ``TrainLoop`` (``run`` -> ``train_epoch`` -> ``train_step``, ``save``/``restore``) and ``fit``
``report``    the step line, TensorBoard, MFU, pictures (fine-tuning: loss + validation curves)
``task``      fine-tuning's module: an encoder of either family + a ``models.heads`` head, encoder
              loading through the checkpoint filter, layer-wise LR decay groups
``metrics``   downstream metrics per task (torchmetrics, dataset-level, synced over ranks)
"""
