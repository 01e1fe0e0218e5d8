"""Data for the experiments: the embedded synthetic shapes (``synthetic``), CIFAR-10 from a local folder
(``cifar10``), ImageFolder trees (``imagefolder``), the Inception preprocessing (``transforms``), and the
``--data`` spec that names one of them (``spec``).
"""
