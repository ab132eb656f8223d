"""Train a multi-task encoder. With no arguments: the offline demo (configs/demo.yaml).

python train.py [CONFIG.yaml] [--output_dir DIR] [--max_steps N] [--any TrainingArguments flag]
accelerate launch --num_processes 2 train.py CONFIG.yaml --use_cpu   # several processes
"""

from multitask_encoder.training import main

if __name__ == "__main__":
    main()
