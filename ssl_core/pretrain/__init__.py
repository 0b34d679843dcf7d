"""Self-supervised pretraining of a backbone on the unlabeled (all train) videos: rho-MoCo / SimCLR objectives, or
VideoMAE's masked reconstruction for a ViT; k-NN and linear-probe monitors, checkpoints that model.init reads.
Pure PyTorch (no Ray, no MLflow).

    python -m ssl_core.pretrain --config configs/pretrain_demo.yaml          # Ray-free
    python -m workflows.pretrain --config configs/pretrain_demo.yaml         # Ray Data + Ray Train + MLflow

Modules: config (the `pretrain:` section), data (rho clips of a video; torch-free, read by Ray Data tasks),
augment, objectives (contrastive), videomae (masked reconstruction), backbone (the classifier with its head kept
aside), knn, step (network, step, checkpoint), local (the Ray-free loop). Nothing is imported
here, so the decode tasks that read `ssl_core.pretrain.data` stay free of torch.
"""
