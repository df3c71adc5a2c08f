#!/usr/bin/env bash
# The source papers' tables, one sweep each: a Hydra experiment (conf/experiment/<name>.yaml) whose
# hydra.sweeper.params holds the table's grid; a table's rows that differ by more than the method are
# the configs of conf/row/<table>/. Extra arguments go to cl-bench: data_dir=~/data, seed=0 (one seed),
# hydra/launcher=joblib|slurm, task_order=random, dataset.split_mnist.class_order=random, ...
#
#   scripts/sweeps.sh TABLE [cl-bench overrides...]
#
# TABLE         reproduces                                                         jobs
# two_cities    the Striveworks "two cities" post: Baseline, EWC, KD at lr 1e-3
#               and 1e-4 (six rows)                                                6
# ewc_tutorial  the split-MNIST EWC tutorial: Joint, Naive, L2, EWC                 4 rows x 3 seeds
# sorberg       Sörberg's permuted MNIST: no penalty, EWC on all earlier tasks,
#               EWC on the last one only                                           3 rows x 3 seeds
# van_de_ven    van de Ven & Tolias's split MNIST (5 tasks x 2 digits, MLP 2x400,
#               2000 iterations a task): None, Offline, EWC, Online EWC, SI, LwF,
#               DGR, DGR + distill, RtF; task-/domain-/class-IL                    27 x 3 seeds
#               (iCaRL, class-IL only: van_de_ven scenario=class
#               row/van_de_ven_split_mnist=icarl)                                  3
# buzzega       Buzzega et al.'s Seq-MNIST class-IL (5 tasks x 2 digits, MLP 2x100,
#               SGD, batch 10, one epoch a task): SGD, JOINT, ER, A-GEM, iCaRL,
#               DER, DER++ at buffers 200, 500 and 5120; oEWC, SI, LwF, GEM
#               (the Task-IL column: cl-bench-report --metric final_task_aware_accuracy)  23 rows x 3 seeds
# buzzega_perm  Buzzega et al.'s P-MNIST (domain-IL, 20 permutations, MLP 2x100, SGD,
#               batch 128, one epoch a task): SGD, JOINT, oEWC, SI, ER, GEM, A-GEM,
#               DER, DER++ at buffers 200, 500 and 5120                            19 rows x 3 seeds
# buzzega_rot   Buzzega et al.'s R-MNIST (domain-IL, 20 rotations in [0, 180) degrees),
#               the same rows                                                      19 rows x 3 seeds
# mammoth       the newer baselines Mammoth ships, at Buzzega et al.'s Seq-MNIST
#               protocol: ER-ACE, X-DER, GDumb, BiC, LUCIR at buffers 200 and 500,
#               LwF.MC                                                             11 rows x 3 seeds
set -euo pipefail

case "${1:-}" in
  two_cities) experiment=two_cities ;;
  ewc_tutorial) experiment=ewc_tutorial_split_mnist ;;
  sorberg) experiment=sorberg_permuted_mnist ;;
  van_de_ven) experiment=van_de_ven_split_mnist ;;
  buzzega) experiment=buzzega_split_mnist ;;
  buzzega_perm) experiment=buzzega_perm_mnist ;;
  buzzega_rot) experiment=buzzega_rot_mnist ;;
  mammoth) experiment=mammoth_baselines_split_mnist ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | cut -c3- >&2; exit 2 ;;
esac
shift
exec cl-bench -m "experiment=$experiment" "$@"
