"""Training under a budget, shared by every accuracy task: the recipes, the budget clock, the schedules (the
learning rate, when to evaluate, when to stop), the loop (validation pauses the clock), the kept best-validation
weights, the training curve, and the final test.

Every cell trains under an explicit budget (bench/spec.py: Budget) with one of three protocols:
  converged      until the validation accuracy plateaus: linear warm-up over the first evaluation interval, then
                 the recipe's rate until `patience` evaluations bring no gain above 0.2 points, a tenth of the rate
                 after each of `lr_drops` such plateaus, and a stop at the next one (converged); the cap (epochs,
                 max_images) stops it too, and then it is not converged
  fixed          a fixed number of epochs (pretraining that keeps its final weights)
  compute-equal  the same training seconds on this device (evaluation pauses the clock) or the same training
                 FLOPs (forward FLOPs x 3 per image) for every model
Fixed and compute-equal budgets run a linear warm-up and a cosine decay over the budget's progress (0 to 1) and
evaluate `evals` times. Validation uses the fixed validation set of the training split (bench/subsets.py:
validation_set, 1,000 images), the same for every cell of a study; the best weights are kept and restored. The
test split is loaded only after training, by `final_test`, once: training code never holds it.

Recipes are data (RECIPES, per family and phase), overridable per cell (`recipe:` axis) and recorded in each row.
"""

from .budget import BudgetClock, Cosine, Plateau, run_budget, schedule_for
from .loop import (Classification, Curve, FinalScore, Objective, divergence, eval_logits, final_test, loss_rose,
                   make_optimizer, save_checkpoint, train, train_classifier)
from .recipes import AXIS_CHECKS, RECIPES, Recipe, recipe_column, recipe_for

__all__ = ["AXIS_CHECKS", "RECIPES", "BudgetClock", "Classification", "Cosine", "Curve", "FinalScore", "Objective",
           "Plateau", "Recipe", "divergence", "eval_logits", "final_test", "loss_rose", "make_optimizer",
           "recipe_column", "recipe_for", "run_budget", "save_checkpoint", "schedule_for", "train", "train_classifier"]
