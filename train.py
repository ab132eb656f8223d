"""Train a multi-task encoder. With no arguments: the offline demo (configs/demo.yaml).

python train.py [CONFIG.yaml] [--output_dir DIR] [--max_steps N] [--any TrainingArguments flag]
accelerate launch --config_file configs/accelerate/multi_gpu.yaml train.py CONFIG.yaml   # several GPUs
accelerate launch --config_file configs/accelerate/cpu_2proc.yaml train.py CONFIG.yaml --use_cpu  # 2 CPU processes
"""

from multitask_encoder.training import main

if __name__ == "__main__":
    main()
