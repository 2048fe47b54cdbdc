import os
os.environ.setdefault('MPLBACKEND', 'Agg')
os.environ.setdefault('DL2021_PROGRESS', '0')
