"""The default model's recipe: synthetic scenes in Flickr8k's layout, the tutorial's training, evaluation."""
