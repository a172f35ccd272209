"""The experiments floor: drivers that run many trainings (tune) above training and inference."""
