"""ALOHA's two simulated bimanual tasks (gym-aloha on MuJoCo through dm_control): transfer
cube and insertion on two ViperX 300s arms with one top camera, the field's own benchmark
for ACT (docs/aloha.md).

`sim` makes their environments (headless EGL rendering, only the camera a policy reads),
`ik` the arms' inverse kinematics on MuJoCo's model, `expert` the scripted demonstrator of
the ACT paper's kind (waypoints from the object's pose at reset), `record` turns its runs
into ACT/ALOHA HDF5 episodes (what a user's ALOHA recordings look like), and `env` puts the
tasks behind the interface the closed-loop evaluation drives. Like `world/`, this is the
simulator's truth: nothing that trains or serves a policy may import it.

May import: errors, config, pipeline, data."""
