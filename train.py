"""Train a multi-task encoder. With no arguments: the offline demo (the package's
configs/demo.yaml). The same as `multitask-encoder-train` or `python -m multitask_encoder.train`.

python train.py [CONFIG.yaml] [--output_dir DIR] [--max_steps N] [--any TrainingArguments flag]
accelerate launch --config_file configs/accelerate/multi_gpu.yaml train.py CONFIG.yaml   # several GPUs
accelerate launch --config_file configs/accelerate/cpu_2proc.yaml train.py CONFIG.yaml --use_cpu  # 2 CPU processes
"""

from multitask_encoder.train import main

if __name__ == "__main__":
    main()
